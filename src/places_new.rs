//! Places API (New) `places:searchNearby`: the request it takes, and its answer mapped to
//! the legacy Nearby Search shape that clients always get (SPEC section 4).
