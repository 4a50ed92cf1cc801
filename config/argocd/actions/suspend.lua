-- A graceful stop, positions kept; an annotation, so syncing spec.suspend from Git keeps it.
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/suspend"] = "true"
obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD suspend action"
return obj
