-- Kill switch, closing out: cancel orders, close every position at market, then stop.
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/halt"] = "flatten"
obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD flatten action"
return obj
