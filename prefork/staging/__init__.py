"""Request bodies on their way in: RAM buffers, spools, write-behind, forms, disk checks."""
