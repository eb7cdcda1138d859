"""One module per screen of the tunedeck app."""
