"""The memberlist wire format: message values, the codec, LZW (pure and native)."""
