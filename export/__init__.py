"""Export a LUSIFER model to a self-contained ONNX folder (fp32 / fp16 / int8). Needs the ``[export]`` extra."""
