"""Small shared helpers: files, images, devices, ranks and argument checks."""
