"""The WebSocket hub (trio-websocket)."""
