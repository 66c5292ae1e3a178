"""certfab: Let's Encrypt for fleets of nginx servers, driven over SSH."""

__version__ = "0.1.0"
