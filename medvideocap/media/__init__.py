"""Media I/O: probing, the decode backends (torchcodec, decord, PyAV), the one frame-time rule and frame specs,
and the ffmpeg helpers the builder cuts and measures with."""
