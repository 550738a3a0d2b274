"""Member model catalogue, fitting and out-of-fold prediction."""
