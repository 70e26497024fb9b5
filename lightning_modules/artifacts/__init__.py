"""What a run hands over and reads back: checkpoints, Hugging Face model folders, ONNX folders."""
