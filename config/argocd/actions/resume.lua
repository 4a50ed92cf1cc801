-- Undoes the suspend action (spec.suspend, the declarative stop, stays Git's to change).
if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["trading.r7.dev/suspend"] = nil
  obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD resume action"
end
return obj
