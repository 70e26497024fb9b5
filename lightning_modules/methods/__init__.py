"""The mechanisms stages compose: the teacher, losses, metrics, pruning, quantization, vocabulary, length splitting."""
