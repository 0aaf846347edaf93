"""edgefleet.core: the shared vocabulary of every side (errors, bundle, signing, schemas, profiles).

Imports only numpy, cryptography and the standard library, so a device can load it without torch.
"""
