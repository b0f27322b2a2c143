"""Front ends that turn a framework's model into a privacy-bridge Program."""
