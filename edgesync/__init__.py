"""edgesync: WebAssembly functions and the SQL schema they need, delivered to edge fleets."""

__version__ = "0.1.0"
