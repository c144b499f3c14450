"""The local cloud: folders as buckets, a local tuner and endpoints, an in-process bus."""
