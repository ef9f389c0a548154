"""Paper bands: the shared band layer (config, protocol, the one driver) and one module per paper."""
