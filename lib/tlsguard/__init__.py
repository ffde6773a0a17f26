"""tlsguard: verified TLS for MicroPython devices (SecureContext, pins, diagnoses)."""
from tlsguard.context import SecureContext, TLSSocket, connect
from tlsguard.errors import TLSError
from tlsguard.pins import PinSet, spki_pin
from tlsguard.store import CredentialStore
from tlsguard.timesync import clock_floor, sync_time
from tlsguard.truststore import BundleError, TrustStore
from tlsguard.x509 import Certificate
from tlsguard import platform

__version__ = "0.1.0"
