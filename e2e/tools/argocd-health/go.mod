// Wrapper module of the Argo CD health-script runner (main.go), built by ../build.sh into bin/argocd-health.
module orderpipe.dev/e2e-tools/argocd-health

go 1.26

require github.com/yuin/gopher-lua v1.1.1
