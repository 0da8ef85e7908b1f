"""File storage behind an interface: the local folder now, object stores later."""
