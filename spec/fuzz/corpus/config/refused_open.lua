listen { addr = "0.0.0.0:80" }
