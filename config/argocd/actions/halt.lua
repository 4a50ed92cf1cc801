-- The kill switch: stops the bot now, without coalescing or rate limit.
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/halt"] = "true"
return obj
