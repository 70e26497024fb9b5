"""The LightningCLI that wires stages and data, exact resume, and the callbacks."""
