"""The SqueezeSAM model: click encoding, network, training, export, ONNX predictor."""
