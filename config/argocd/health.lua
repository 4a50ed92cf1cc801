-- Argo CD health of a TradingBot (trading.r7.dev/v1alpha1).
-- Healthy: trading with the current config. Progressing: the operator has not caught up
-- with the latest generation, or a start/restart/stop is under way. Suspended: stopped on
-- purpose (spec.suspend or the halt kill switch). Degraded: failed or not ready.
local hs = {}
local function condition(kind)
  if obj.status == nil or obj.status.conditions == nil then return nil end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then return c end
  end
  return nil
end

if obj.status == nil or obj.status.observedGeneration == nil
    or obj.status.observedGeneration < obj.metadata.generation then
  hs.status = "Progressing"
  hs.message = "waiting for the operator to observe the latest change"
  return hs
end

local phase = obj.status.phase or "Pending"
local pending = obj.status.pendingAction
local degraded = condition("Degraded")
local ready = condition("Ready")

if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = (degraded and degraded.message) or "the bot failed to start"
  return hs
end
-- A change the operator refused to run (the bot keeps trading on its previous config).
if degraded ~= nil and degraded.status == "True" and (degraded.reason == "SpecInvalid"
    or degraded.reason == "ImageNotAllowed" or degraded.reason == "SecretNotAllowed") then
  hs.status = "Degraded"
  hs.message = degraded.reason .. ": " .. (degraded.message or "the new config cannot run")
  return hs
end
if phase == "Halted" then
  hs.status = "Suspended"
  hs.message = "halted by the kill switch (trading.r7.dev/halt)"
  return hs
end
if phase == "Stopped" then
  hs.status = "Suspended"
  hs.message = "stopped; positions are kept"
  return hs
end
local progressing = condition("Progressing")
if phase == "Stopping" and progressing ~= nil
    and (progressing.reason == "Draining" or progressing.reason == "Flattening") then
  hs.status = "Suspended"
  hs.message = "kill switch: " .. progressing.reason .. " (" .. (progressing.message or "") .. ")"
  return hs
end
if phase == "Pending" or phase == "Starting" or phase == "Restarting" or phase == "Stopping" then
  hs.status = "Progressing"
  hs.message = phase
  if pending ~= nil and pending.reason ~= nil then
    hs.message = phase .. ": " .. pending.reason
  end
  return hs
end
if pending ~= nil then
  hs.status = "Progressing"
  hs.message = pending.action .. " pending (" .. (pending.reason or "change") .. ")"
  return hs
end
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "trading"
  return hs
end
hs.status = "Degraded"
hs.message = (ready and ready.message) or "the bot is not ready"
return hs
