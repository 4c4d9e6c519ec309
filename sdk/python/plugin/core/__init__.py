"""Reference-compatible location of host-side classes plugins may import for typing."""
