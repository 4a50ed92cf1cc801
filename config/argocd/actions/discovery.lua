-- Argo CD resource actions for a TradingBot: the same requests `kubectl tradingbot` makes.
-- Stop and resume use the trading.r7.dev/suspend annotation, so a sync of the spec from Git
-- (spec.suspend) never undoes them.
local actions = {}
local annotations = (obj.metadata.annotations or {})
local halt = annotations["trading.r7.dev/halt"]
local halted = halt ~= nil and halt ~= ""
local stopped = annotations["trading.r7.dev/suspend"] == "true"
local declared = obj.spec ~= nil and obj.spec.suspend == true
actions["restart"] = {["disabled"] = halted or stopped or declared}
actions["suspend"] = {["disabled"] = stopped}
actions["resume"] = {["disabled"] = not stopped}
actions["halt"] = {["disabled"] = halt == "true"}
actions["drain"] = {["disabled"] = halt == "drain"}
actions["flatten"] = {["disabled"] = halt == "flatten"}
actions["unhalt"] = {["disabled"] = not halted}
return actions
