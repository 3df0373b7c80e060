module corr/bench/go-corr

go 1.19
