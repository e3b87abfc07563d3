"""Image handling around the model: decode, letterbox, label maps, RLE, PNG and overlays."""
