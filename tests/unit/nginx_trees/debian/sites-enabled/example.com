# example.com: the main site and its www alias, plus the blog, in one file.
# Managed by hand; keep the tabs.

server {
	listen 80;
	listen [::]:80;

	# both names, one per line
	server_name example.com
		www.example.com   # the alias
		;

	root /var/www/example.com;
	index index.html;

	# quoted strings may contain { and ; and # without ending anything
	add_header X-Note "braces { and ; semicolons # are fine here" always;
	add_header X-Other 'single } quoted; # too';

	location / {
		try_files $uri $uri/ =404;
	}

	location ~ "^/img/[a-z]{2,8}\.png$" {
		expires 7d;
	}
}

# second site in the same file
server {
	listen 80;
	listen [::]:80;
	server_name blog.example.com; # the blog
	root /var/www/blog;

	location / {
		try_files $uri $uri/ /index.html;
	}
}
