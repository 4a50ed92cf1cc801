-- A graceful, coalesced, rate-limited restart (the operator records who asked).
if obj.metadata.annotations == nil then obj.metadata.annotations = {} end
obj.metadata.annotations["trading.r7.dev/restartedAt"] = os.date("!%Y-%m-%dT%H:%M:%SZ")
obj.metadata.annotations["trading.r7.dev/restart-reason"] = "Argo CD restart action"
return obj
