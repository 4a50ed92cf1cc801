if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["trading.r7.dev/halt"] = nil
  obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD unhalt action"
end
return obj
