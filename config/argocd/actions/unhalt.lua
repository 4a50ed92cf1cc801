if obj.metadata.annotations ~= nil then
  obj.metadata.annotations["trading.r7.dev/halt"] = nil
end
return obj
