"""The declarative indicator library: models, loading, compilation and evaluation."""
