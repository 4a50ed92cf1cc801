-- Kill switch, gently: no new entries; exits managed until flat, then the bot stops.
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/halt"] = "drain"
obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD drain action"
return obj
