#!/usr/bin/env python3
"""Build dist/siem_tool.pyz: siem_tool with docopt-ng, requests and their dependencies in one
file, to copy to an offline Windows PC that has Python 3.9+:

    python tools/build_pyz.py            (needs the package index once, on the building PC)
    py siem_tool.pyz send --siem=qradar --log=all --config=C:\\siem_tool\\config.ini

Only pure-Python wheels go in, so the same file runs on Windows and Linux. The archive has its
own __main__.py, which returns siem_tool's exit code (the one zipapp writes would drop it).
"""
import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipapp

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ["docopt-ng", "requests", "urllib3", "idna", "certifi", "charset-normalizer", "tqdm"]
MAIN = "import sys\n\nimport siem_tool\n\nsys.exit(siem_tool.main())\n"


def install_pure_wheels(target: pathlib.Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--platform", "any", "--implementation", "py", "--python-version", "3.9",
                    "--target", str(target), *PACKAGES], check=True)


def build(output: pathlib.Path) -> pathlib.Path:
    with tempfile.TemporaryDirectory() as folder:
        staging = pathlib.Path(folder) / "siem_tool"
        install_pure_wheels(staging)
        for cache in staging.rglob("__pycache__"):
            shutil.rmtree(cache)
        shutil.rmtree(staging / "bin", ignore_errors=True)
        shutil.copy2(ROOT / "siem_tool.py", staging / "siem_tool.py")
        (staging / "__main__.py").write_text(MAIN, encoding="utf-8")
        output.parent.mkdir(parents=True, exist_ok=True)
        zipapp.create_archive(staging, output, interpreter="/usr/bin/env python3", compressed=True)
    return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=str(ROOT / "dist" / "siem_tool.pyz"))
    args = parser.parse_args()
    print(build(pathlib.Path(args.output)))


if __name__ == "__main__":
    main()
