"""What runs tell people: metrics records and tables, pictures, and failures in one sentence."""
