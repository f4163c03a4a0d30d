"""Speech generators, codecs and the blocks they share (see ../shared/DESIGN.md for the layers)."""
