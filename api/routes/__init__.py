"""HTTP routers, one per resource; each route is one library call between schema conversions."""
