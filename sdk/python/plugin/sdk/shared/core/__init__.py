"""Model code shared by the SDK generations."""
