"""memberlist's wire format: message values, the codec (message bodies and their
framing), LZW (pure and native) and the encryption roll-out mode of one node."""
