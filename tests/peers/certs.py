"""Certificates made at test time, written as PEM files into a directory.

``ca_signed`` and ``unrelated`` use trustme; ``self_signed`` and ``expired``
use cryptography directly, because trustme cannot make a certificate that is
its own issuer (QRadar's default) or one whose validity has already ended.
"""

import datetime
import ipaddress
import os
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence, Union

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PathLike = Union[str, "os.PathLike[str]"]
QRADAR_NAME = "qradar.example.invalid"


@dataclass(frozen=True)
class CertFiles:
    """Paths of a server certificate (leaf first, then any chain) and its key.

    ``ca`` is the file a client should trust: the issuing CA, or for a
    self-signed certificate the certificate itself.
    """

    cert: str
    key: str
    ca: Optional[str] = None


def _write(directory: PathLike, name: str, data: bytes) -> str:
    path = os.path.join(os.fspath(directory), name)
    with open(path, "wb") as f:
        f.write(data)
    return path


def _write_leaf(directory: PathLike, prefix: str, leaf: "trustme.LeafCert") -> tuple:
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    cert = _write(directory, prefix + "-cert.pem", chain)
    key = _write(directory, prefix + "-key.pem", leaf.private_key_pem.bytes())
    return cert, key


def ca_signed(directory: PathLike, names: Sequence[str] = ("127.0.0.1", "localhost"),
              prefix: str = "server") -> CertFiles:
    """A fresh trustme CA and a leaf for ``names`` (DNS names and/or IP addresses)."""
    ca = trustme.CA()
    cert, key = _write_leaf(directory, prefix, ca.issue_cert(*names))
    ca_path = _write(directory, prefix + "-ca.pem", ca.cert_pem.bytes())
    return CertFiles(cert=cert, key=key, ca=ca_path)


def unrelated(directory: PathLike, names: Sequence[str] = ("127.0.0.1", "localhost"),
              prefix: str = "unrelated") -> CertFiles:
    """A leaf from another, unrelated CA: valid in itself, but not the one a client trusts."""
    return ca_signed(directory, names, prefix=prefix)


def self_signed(directory: PathLike, name: str = QRADAR_NAME,
                prefix: str = "selfsigned") -> CertFiles:
    """A QRadar-style certificate: its own issuer, issued for ``name`` only.

    It is NOT valid for 127.0.0.1, so a client connecting by IP must pin exactly
    this certificate (``ca`` is the certificate itself) and skip the name check.
    """
    now = _now()
    return _self_signed_files(directory, prefix, [name],
                              now - datetime.timedelta(days=1), now + datetime.timedelta(days=3650))


def expired(directory: PathLike, names: Sequence[str] = ("127.0.0.1", QRADAR_NAME),
            prefix: str = "expired", days_ago: int = 1) -> CertFiles:
    """A self-signed certificate for ``names`` whose validity ended ``days_ago`` days ago."""
    end = _now() - datetime.timedelta(days=days_ago)
    return _self_signed_files(directory, prefix, names, end - datetime.timedelta(days=365), end)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)


def _self_signed_files(directory: PathLike, prefix: str, names: Sequence[str],
                       not_before: datetime.datetime, not_after: datetime.datetime) -> CertFiles:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _self_signed_cert(key, names, not_before, not_after)
    cert_path = _write(directory, prefix + "-cert.pem", cert.public_bytes(serialization.Encoding.PEM))
    key_path = _write(directory, prefix + "-key.pem", key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return CertFiles(cert=cert_path, key=key_path, ca=cert_path)


def _self_signed_cert(key: ec.EllipticCurvePrivateKey, names: Sequence[str],
                      not_before: datetime.datetime, not_after: datetime.datetime) -> x509.Certificate:
    # Shaped like `openssl req -x509` output (what QRadar ships): subject ==
    # issuer, CA:TRUE, so OpenSSL accepts it as its own trust anchor, also
    # with VERIFY_X509_STRICT (Python 3.13's default).
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(list(_general_names(names))), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(_key_usage(), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
    )
    return builder.sign(key, hashes.SHA256())


def _general_names(names: Iterable[str]) -> Iterable[x509.GeneralName]:
    for name in names:
        try:
            yield x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            yield x509.DNSName(name)


def _key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True,
        crl_sign=False, encipher_only=False, decipher_only=False)
