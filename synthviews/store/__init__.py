"""The on-disk format in one place: names and encoding, manifest, writer, verification, card, Hub upload."""
