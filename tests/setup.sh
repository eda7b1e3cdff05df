#!/usr/bin/env bash
# Prepares this machine for the test suite: Debian's rsyslog (the real syslog peer), a Japanese
# locale (the locale test), then a virtual environment with siem_tool and its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=0
command -v rsyslogd >/dev/null 2>&1 || need_apt=1
dpkg -s rsyslog-gnutls >/dev/null 2>&1 || need_apt=1
command -v openssl >/dev/null 2>&1 || need_apt=1
locale -a 2>/dev/null | grep -qi '^ja_JP\.utf-\?8$' || need_apt=1
if [ "$need_apt" = 1 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq rsyslog rsyslog-gnutls openssl locales >/dev/null
  $sudo sed -i 's/^# *\(ja_JP.UTF-8 UTF-8\)/\1/' /etc/locale.gen
  grep -q '^ja_JP.UTF-8 UTF-8' /etc/locale.gen || echo 'ja_JP.UTF-8 UTF-8' | $sudo tee -a /etc/locale.gen >/dev/null
  $sudo locale-gen >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
