"""What runs leave behind and later runs read: the stage-1 amplifier (and its cache), the stage-2
checkpoint, its export (ONNX / OpenVINO with a sidecar), and the one migration that keeps files of older
versions loading."""
