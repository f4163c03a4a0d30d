"""One module per studio tab: a `build()` that lays out the tab and pure handler functions."""
