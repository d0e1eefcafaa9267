"""The ledger's Lua scripts, shipped as package data (installed as ``sidecar.lua``)."""
