-- The kill switch: stops the bot now, without coalescing or rate limit; positions kept.
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/halt"] = "true"
obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD halt action"
return obj
