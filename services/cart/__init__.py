"""Cart and wishlist: per-owner (user or guest session) items."""
