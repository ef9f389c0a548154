"""Pure tensor functions: log-prob gathering and the preference losses."""
