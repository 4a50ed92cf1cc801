-- Argo CD resource actions for a TradingBot: the same requests `kubectl tradingbot` makes.
local actions = {}
local annotations = (obj.metadata.annotations or {})
local halted = annotations["trading.r7.dev/halt"] == "true"
local suspended = obj.spec ~= nil and obj.spec.suspend == true
actions["restart"] = {["disabled"] = halted or suspended}
actions["suspend"] = {["disabled"] = suspended}
actions["resume"] = {["disabled"] = not suspended}
actions["halt"] = {["disabled"] = halted}
actions["unhalt"] = {["disabled"] = not halted}
return actions
