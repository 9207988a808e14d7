pool "a" { proxies = { { url = "http://h:1", headers = { X = "a\r\nB: c" } } } }
